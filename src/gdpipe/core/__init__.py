"""What every stage uses: params (config), files, the command entry point, the artifacts stages hand each other, progress bars."""
