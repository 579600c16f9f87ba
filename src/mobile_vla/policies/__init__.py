"""mobile_vla.policies"""
