"""twotower.jobs"""
