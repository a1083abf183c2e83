from segaudit.cli.app import main

main()
