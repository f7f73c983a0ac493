from omiro_trio.cli import main

main()
