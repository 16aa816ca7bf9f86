"""Console commands (sfr-erase, sfr-evaluate, sfr-app): parse, call the library, print."""
