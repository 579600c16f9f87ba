"""The bottom layer: small helpers every other package may use and that use nothing of ours.

``files`` (sha256 of a file, atomic writes with fsync), ``device`` (``resolve_device``), ``version``
(``code_version``). Nothing here imports torch at module level except ``device``.
"""
