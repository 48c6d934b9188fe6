"""rsvlm.fusion"""
