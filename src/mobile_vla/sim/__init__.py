"""mobile_vla.sim"""
