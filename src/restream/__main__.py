from restream.cli import main

main()
