from offpath.query.main import main

main()
