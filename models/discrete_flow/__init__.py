"""The discrete-flow model: its network (``network``), its coding (``coding``) and its trainer (``train``)."""
