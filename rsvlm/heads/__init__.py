"""rsvlm.heads"""
