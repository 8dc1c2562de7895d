"""qoin.chain"""
