"""rsvlm.bridges"""
