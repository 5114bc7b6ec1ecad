from services.decoder.app import main

main()
