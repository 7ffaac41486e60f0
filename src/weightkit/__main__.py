from weightkit.cli import main

main()
