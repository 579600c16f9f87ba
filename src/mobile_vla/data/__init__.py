"""mobile_vla.data"""
