"""Checks for the book's exercises, one module per chapter (``rhlens.exercises.ch02`` ...).

Each ``check_*`` function runs the reader's solution on cases with known answers and raises
``AssertionError`` with a hint when it is wrong, or prints a short confirmation.
"""
