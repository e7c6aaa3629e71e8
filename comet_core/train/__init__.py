"""Training support for CoMeT memory: offline data generators (``data``)."""
