"""``pie fivek``: MIT-Adobe FiveK as users have it, camera raw DNGs and the experts' ProPhoto TIFFs, as sRGB.

:mod:`.decode` turns a file into sRGB pixels (LibRaw for DNGs, littleCMS for
ICC-tagged files), :mod:`.layout` finds the originals, the experts' folders and
the test split, and :mod:`.prepare` keeps every image once in the workspace
with a record, the originals exactly where and as ``pie rules`` keeps them.
"""
