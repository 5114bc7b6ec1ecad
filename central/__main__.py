from central.app import main

main()
