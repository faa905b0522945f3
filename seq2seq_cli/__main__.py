from seq2seq_cli.cli import main

if __name__ == "__main__":  # not when a spawned process (s2s serve's decoder) imports it
    main()
