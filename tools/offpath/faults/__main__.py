from offpath.faults.run import main

main()
