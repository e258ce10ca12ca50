"""What every stage uses: params (config), files, the command entry point, the artifacts the stages hand
each other, progress bars, waiting for another process."""
