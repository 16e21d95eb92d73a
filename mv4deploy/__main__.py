from mv4deploy.cli import main

main()
