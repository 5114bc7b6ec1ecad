from services.text_encoder.app import main

main()
