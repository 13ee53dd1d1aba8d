from kdtemp.cli.app import main

main()
