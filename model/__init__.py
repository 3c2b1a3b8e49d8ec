"""twotower.model"""
