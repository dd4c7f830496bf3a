"""The book's exercises: checkers, one module per chapter (``rhlens.book.exercises.ch02`` ...), and
the generator of the exercise notebooks (:mod:`rhlens.book.exercises.generate`).

Each ``check_*`` function runs the reader's solution on cases with known answers, compared with
the package's own function for the concept, and prints ``✓ ... passed`` or raises
:class:`~rhlens.book.exercises.check.ExerciseFailed` with a one-line hint; an exercise not attempted
yet (its stub raises ``NotImplementedError``) fails the same way.
"""
