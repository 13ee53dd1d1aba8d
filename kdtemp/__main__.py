from kdtemp.cli import main

main()
