from offpath.client.cli import main

main()
