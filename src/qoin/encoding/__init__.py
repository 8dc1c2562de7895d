"""qoin.encoding"""
