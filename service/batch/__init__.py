"""``msdn segment``: many studies through the ``/segment`` pipeline from the command line.

:mod:`service.batch.inputs` finds the studies (DICOM folders split by series, zips, NIfTI/NRRD/.npy,
a JSON manifest); :mod:`service.batch.local` runs one study in this process (``service.request``,
the same code as ``POST /segment``); :mod:`service.batch.client` sends it to a running server
instead; :mod:`service.batch.runner` writes outputs, skips finished studies and writes
``summary.csv``; :mod:`service.batch.cli` is the command.
"""
