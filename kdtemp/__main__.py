from kdtemp.cli.entry import main

main()
