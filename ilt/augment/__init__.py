"""The data of the Feedback and Fix knowledge tasks (the ILT paper, section 3.2).

:mod:`ilt.augment.text` holds the text side: token frequencies over the
training text, rare-token selection of third-party sentences and hard-case
mining by decoding. ``ilt augment ...`` (:mod:`ilt.commands.augment`) is the
command line over it.
"""
