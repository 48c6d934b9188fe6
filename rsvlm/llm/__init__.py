"""rsvlm.llm"""
