"""rsvlm.models"""
