"""What the book's chapters need beyond the pipeline: the runtime model switch and the exercise
checkers."""
