from lightning_prune.cli.main import main

main()
