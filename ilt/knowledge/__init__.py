"""The data of the Feedback and Fix knowledge tasks (the ILT paper, section 3.2).

:mod:`ilt.knowledge.text_tasks` holds the text side: token frequencies over the
training text, rare-token selection of third-party sentences and hard-case
mining by decoding. ``ilt augment ...`` (:mod:`ilt.cli.knowledge_commands`) is the
command line over it.
"""
