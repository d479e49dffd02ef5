print("zoo")
