from dlowrank.cli import main

main(prog_name="dlowrank")
