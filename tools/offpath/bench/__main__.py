from offpath.bench.run import main

main()
