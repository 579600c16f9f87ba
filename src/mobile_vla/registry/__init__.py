"""mobile_vla.registry"""
