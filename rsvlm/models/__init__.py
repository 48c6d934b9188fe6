"""Models: ComposedModule (base.py), the one vision-language model all systems are recipes of (vlm.py), MVPNet."""
