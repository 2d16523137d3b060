from stvm_sdk.cli.app import main

main()
