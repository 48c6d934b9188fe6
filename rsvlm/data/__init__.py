"""rsvlm.data"""
