from offpath.ingest.main import main

main()
