"""qoin.crypto"""
