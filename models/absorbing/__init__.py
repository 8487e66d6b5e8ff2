"""The absorbing-state (mask) diffusion model, i.e. the order-agnostic ARDM:
its network (``network``), its coding (``coding``) and its trainer (``train``)."""
