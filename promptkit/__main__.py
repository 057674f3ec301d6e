from promptkit.cli import main

main()
