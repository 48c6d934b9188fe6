"""rsvlm.encoders"""
