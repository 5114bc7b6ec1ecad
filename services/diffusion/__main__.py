from services.diffusion.app import main

main()
